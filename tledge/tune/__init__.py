"""Stage 4, choosing: ``tledge tune`` finds the most accurate model that meets a latency budget
on the user's own device. ``space`` (the candidates), ``search`` (latency first, then
successive halving; resumable), ``report`` (the table, the chart, best.yaml). It builds on every
stage before it: models, quantize, measure, the device loop, training."""
