"""tledge.core.quiet: native libraries' noise lines never reach the terminal, whole or in pieces."""

import subprocess
import sys

SCRIPT = r"""
import os, time
from tledge.core import quiet
quiet._filter = quiet._LiveFilter()
# the converter's C++ print, reaching the pipe in two pieces, then a line of the user's
os.write(2, b"fully_quan")
time.sleep(0.3)
os.write(2, b"tize: 0, inference_type: 6, input_inference_type: UINT8\n")
os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
os.write(2, b"  40%|####      | 4/10\r")  # a progress bar: passed on before its line ends
time.sleep(0.3)
os.write(2, b"\nWARNING: a line for the user\n")
quiet._filter.close()
"""


def test_noise_split_across_writes_is_still_filtered():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "fully_quan" not in err and "tize:" not in err, err
    assert "XNNPACK" not in err, err
    assert "4/10" in err and "WARNING: a line for the user" in err, err


def test_native_stderr_filtered_passes_on_everything_else(capfd):
    import os

    from tledge.core.quiet import native_stderr_filtered

    with native_stderr_filtered():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"a real error\n")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "a real error" in err
