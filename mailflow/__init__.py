"""mailflow: Hot Team accountability partnerships by email."""
