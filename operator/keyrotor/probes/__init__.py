"""Consumer probes: how keyrotor asks a consumer whether a version works."""
