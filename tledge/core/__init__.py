"""The base floor every stage stands on: errors and their one-line messages (``errors``),
atomic file writes and path checks (``fileio``), the run configuration (``config``, checked by
``fieldcheck``), the run folder's layout and lock (``rundir``), and the filter that keeps native
libraries' noise off the terminal (``quiet``). No TensorFlow, no OpenCV."""
