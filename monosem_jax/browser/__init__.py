"""Static HTML feature browser of an SAE run (W/browser; opens from disk, no server)."""
