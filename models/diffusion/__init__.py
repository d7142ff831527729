"""The lesion synthesizer: UNet config, DDPM training recipe, saved folder format and the inpainter.

Layout follows diffusers: the model (``UNet2DModel``), the schedulers (``DDPMScheduler`` for training,
``DDIMScheduler`` for sampling) and the pipeline (:class:`~models.diffusion.inpaint.LesionInpainter`)
are kept apart, and each component's config is saved beside its weights.
"""
