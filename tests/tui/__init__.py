"""The dashboard: Pilot behaviour tests, SVG snapshots, and runs against real masters."""
