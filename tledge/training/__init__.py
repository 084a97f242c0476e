"""Stage 1, training: the frozen-then-fine-tune recipe and quantization-aware training.

``train`` runs the phases and writes the run folder; ``fitting`` fits one phase (class weights,
the kept epoch, resume); ``features`` caches what a frozen part of the network computes (the
frozen phase's features, fine-tune's bottom activations); ``qat`` wraps the flat classifier for
QAT; ``history`` writes the curves; ``distribution`` picks the strategy (mirrored, multi-worker);
``runmodel`` loads a run's models. TensorFlow is imported on use."""
