"""Stage 3, measurement: accuracy of any model on labelled data (``evaluate``: the report,
predictions.csv, mistakes.png) and its speed, size and memory on this machine (``bench``, each
format in a fresh process; ``benchreport``, the table and chart)."""
