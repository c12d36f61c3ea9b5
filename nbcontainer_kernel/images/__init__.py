"""Host side: building images. Kernel images (:mod:`.kernel`), run and runtime images
(:mod:`.runs`), and the wheels both install (:mod:`.wheels`, from the package index a
kernel was given, :mod:`.package_index`).
"""
