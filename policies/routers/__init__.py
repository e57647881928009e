"""Request-level routers across data-parallel replicas, one per module (see registry); an
installed package adds its own through the `thundersim.routers` entry-point group."""
