"""The studio: style presets, the end-to-end portrait job, the job store, and the demo."""
