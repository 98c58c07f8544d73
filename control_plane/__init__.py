"""The control plane: agent registry, versioned policy store, xDS translation and serving."""
