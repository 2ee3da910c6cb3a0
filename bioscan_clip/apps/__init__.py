"""The applications over the library: the ``bioscan-clip`` command line (:mod:`.cli`, one module per subcommand in
:mod:`.commands`), training's command line (:mod:`.train`), the demo (:mod:`.demo`), the main job
(:mod:`.quickstart`), publishing on the Hub (:mod:`.publish`) and the CLIBD converter (:mod:`.convert_clibd`).
The library never imports this package."""
