"""``python -m tledge.cli``: the ``tledge`` command."""

from tledge.cli import main

main()
