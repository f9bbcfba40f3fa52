"""pozfast's ops, one file each: dispatch, autograd and torch.library registration."""
