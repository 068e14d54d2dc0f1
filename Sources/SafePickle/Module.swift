// Placeholder: this module gets code with its issue.
