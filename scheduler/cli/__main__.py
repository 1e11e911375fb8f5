"""``python -m scheduler.cli``: the ``sfs-cleanup`` command without the installed script."""

from scheduler.cli import main

main()
