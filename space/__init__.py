"""The Space's files (app.py, requirements.txt, README.md), installed as ``bioscan_clip.space`` so that an installed
package can export them (``bioscan-clip push space``); pyproject.toml maps the package to this folder. The Space
itself runs ``app.py`` as a script and ignores this file, which imports nothing."""
