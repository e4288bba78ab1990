"""The native ComfyUI route: AnyTalker as ComfyUI's own Wan MODEL.

:mod:`.weights` loads a checkpoint through ComfyUI's loader (trunk) and registers the AnyTalker layers on
the same ``WanModel``; :mod:`.patches` runs AFCA inside ComfyUI's Wan blocks through its patch hooks;
:mod:`.conditioning` turns the core's ``Conditioning`` into CONDITIONING / LATENT; :mod:`.guider` is the
separate text/audio guidance GUIDER; :mod:`.long_clip` runs the core's overlapping-window loop with ComfyUI's
sampler; :mod:`.nodes` are the V3 nodes.
"""
