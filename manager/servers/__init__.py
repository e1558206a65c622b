"""Model servers: profiles, the lifecycle state machine, processes, monitoring, inference."""
