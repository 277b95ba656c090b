"""Publishing versions where consumers read them: the Kubernetes Secret and its slots."""
