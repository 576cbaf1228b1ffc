"""Where worker VMs come from: local processes, OpenNebula."""
