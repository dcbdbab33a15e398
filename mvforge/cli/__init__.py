"""Command-line apps. Thin: options are parsed here, heavy imports (torch, bpy, ray) happen inside commands."""
