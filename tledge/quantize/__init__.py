"""Stage 2, quantization: the TFLite converter set up for each format (``conversion``),
bias correction of post-training int8 (``biascorrect``), the graph rewrites that keep XNNPACK's
int8 kernels whole (``graph_rewrite``), and the per-layer int8 error report (``quantdebug``).
``tledge.export`` builds on it: it verifies the files and writes them with their metadata."""
