"""Host side: the one door to Docker (:mod:`.engine`) and what sits right on it.

The labels and names of what this project makes, the sweep of orphans, the warm
runner pool, and the options of a container as flags spell them. Nothing here
ships into images; nothing here knows about kernels, runs or backends.
"""
