// Placeholder until the notifier engine lands (issue 4).
