"""What linerd and the liner client both need, and nothing else: pure, standard library only.

Neither side's modules are imported here, so installing only the client brings no daemon code.
"""
