"""One panel per area of the main screen (devices, activity, files, folders, conflicts, health)."""
