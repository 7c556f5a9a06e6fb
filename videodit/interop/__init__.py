"""Models trained elsewhere, loaded into videodit's pipeline: ``wan`` (Wan 2.1 T2V, diffusers layout).

Nothing here is imported by ``import videodit``; ``Pipeline.load`` imports a module only when it
recognises its folder layout.
"""
