"""The front ends: the three command lines, the Textual chat app and report view, `medchat ask`.

The top layer: it may import everything below it, nothing below imports it."""
