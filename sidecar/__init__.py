"""The sidecar: the data plane that runs beside each agent instance."""
