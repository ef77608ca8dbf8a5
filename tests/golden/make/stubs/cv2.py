# The official helpers import OpenCV for image utilities the demo loop does not call.
