"""Hosts: the node types and core nodes the pack runs on (ComfyUI itself, or the standalone host)."""
