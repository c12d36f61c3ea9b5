"""%%remote_run's library: a cell or a notebook, snapshotted into a run image, run on a
backend, recorded in the ledger, and its verified results read back.

* :mod:`.dispatch`: RemoteRunner (snapshot -> build -> push -> submit -> wait -> collect)
* :mod:`.ledger`: every run in SQLite; :mod:`.results`: what a finished run left
* :mod:`.run_images`: layered run images; :mod:`.notebooks`: headless notebooks
* :mod:`.local_run`: run an image here and wait for it (the Python API's run_image)

Nothing here knows a widget or a magic, or the name of a platform.
"""
