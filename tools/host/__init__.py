"""Host tooling for Guidance Lab: provisioning of the ComfyUI host and a small server runner."""
