"""Images: component locks, Dockerfile rules, and images built with buildah and run."""
