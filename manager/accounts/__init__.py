"""Who may do what: users, sessions, API keys and the one permission check."""
