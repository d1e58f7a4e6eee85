"""The in-app inbox: messages of the inbox channel, read by the tenant's front-end."""
