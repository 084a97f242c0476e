"""EfficientNet-Lite0, built to its published definition (there is no Keras application).

EfficientNet-Lite is EfficientNet adapted to edge accelerators and int8
(tensorflow/tpu models/official/efficientnet/lite/README.md): squeeze-and-excite removed,
swish replaced by ReLU6, and the stem and head not scaled with the model. Lite0 is the base
network (width and depth 1.0, 224 px): a 3x3/2 stem of 32 filters, then seven stages of
MBConv blocks, then a 1x1 head of 1280 filters.

    stage  expand  kernel  stride  filters  repeats
      1      1       3       1       16        1
      2      6       3       2       24        2
      3      6       5       2       40        2
      4      6       3       2       80        3
      5      6       5       1      112        3
      6      6       5       2      192        4
      7      6       3       1      320        1

Every layer is a plain Keras Conv2D / DepthwiseConv2D / BatchNormalization / ReLU / Add, so
tensorflow-model-optimization quantizes it as it is. Layer names follow Keras' EfficientNet
(``block2a_expand_conv``...), so weights saved from a model of this architecture load by name.
"""

from __future__ import annotations

STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN = {"momentum": 0.99, "epsilon": 1e-3}


def efficientnet_lite0(input_tensor, name: str = "efficientnet_lite0"):
    import tf_keras as keras

    L = keras.layers
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        input_tensor)
    x = L.BatchNormalization(name="stem_bn", **BN)(x)
    x = L.ReLU(6.0, name="stem_activation")(x)
    filters_in = 32
    for stage, (expand, kernel, stride, filters, repeats) in enumerate(STAGES, start=1):
        for i in range(repeats):
            prefix = f"block{stage}{chr(ord('a') + i)}_"
            strides = stride if i == 0 else 1
            inputs = x
            if expand != 1:
                x = L.Conv2D(filters_in * expand, 1, padding="same", use_bias=False,
                             name=prefix + "expand_conv")(x)
                x = L.BatchNormalization(name=prefix + "expand_bn", **BN)(x)
                x = L.ReLU(6.0, name=prefix + "expand_activation")(x)
            x = L.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False,
                                  name=prefix + "dwconv")(x)
            x = L.BatchNormalization(name=prefix + "bn", **BN)(x)
            x = L.ReLU(6.0, name=prefix + "activation")(x)
            x = L.Conv2D(filters, 1, padding="same", use_bias=False,
                         name=prefix + "project_conv")(x)
            x = L.BatchNormalization(name=prefix + "project_bn", **BN)(x)
            if strides == 1 and filters_in == filters:
                x = L.Add(name=prefix + "add")([x, inputs])
            filters_in = filters
    x = L.Conv2D(1280, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = L.BatchNormalization(name="top_bn", **BN)(x)
    x = L.ReLU(6.0, name="top_activation")(x)
    # as keras.applications do: the model starts at the tensor's source Input
    return keras.Model(keras.utils.get_source_inputs(input_tensor), x, name=name)
