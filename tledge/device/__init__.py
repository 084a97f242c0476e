"""The device loop from the laptop, over SSH: ``tledge deploy``, ``bench --on``, ``camera --on``.

Laptop side: :mod:`~tledge.device.ssh` (the transport and its one-line errors),
:mod:`~tledge.device.deploy` (what is sent and installed), :mod:`~tledge.device.remote`
(benchmark and camera on the device). Device side: :mod:`~tledge.device.agent`, sent as source
and run by the device's own python3, standard library only.
"""
