"""The VM layer: configuration, loaders, device tree, the run loop."""
