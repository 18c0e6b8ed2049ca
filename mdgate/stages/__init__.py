"""The protocol's stages that are not plain MD: sanity (before MD) and the on-trajectory oracle."""
