"""A stand-in for a Keras process: writes TensorFlow's real start-up lines (as captured on a
CPU machine) to file descriptor 2 the way native code does, and one line that is news."""

from __future__ import annotations

import os

START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795957557.608486   26169 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1795957557.609588   26169 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1795957557.700000   26169 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1795957520.943358   25584 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]
NEWS = "E0000 00:00:1795957600.000000   26169 bfc_allocator.cc:1] Allocator ran out of memory (a real error)"


def speak(send) -> str:
    os.write(2, ("\n".join([*START_UP, NEWS]) + "\n").encode())
    return "spoken"
