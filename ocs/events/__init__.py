"""Notifications and provisioning events: the outbox, and their delivery."""
