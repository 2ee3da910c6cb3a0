"""The ``bioscan-clip`` subcommands, one module each (``add_arguments(parser)`` and ``run(args)``): parse the
options, call the library, print what a person reads. Shared options live in :mod:`.options`."""
