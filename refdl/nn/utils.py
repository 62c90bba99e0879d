"""Gradient utilities (torch.nn.utils): clip_grad_norm_, clip_grad_value_. (to be written)"""
