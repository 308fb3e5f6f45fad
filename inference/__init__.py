"""The inference package: everything the container runs, one module per concern, no torch, nothing from training.

process.py (the platform's entry point) calls `inference.run.run`; training and the tests import the
same modules (the model folder reader, the image readers, crops.py), so that what they measure is
what the container computes.

    contract.py       socket slugs, file names, patch size, class names, what "confidence" means
    errors.py         InputError (a problem the user can fix), log lines, phase timings
    sockets.py        inputs.json and where each socket's file lies (the platform's UUID names)
    image_checks.py   a file's structure before decoding: every page there, nothing damaged
    stack_files.py    a stack's pages without SimpleITK: MetaImage with numpy, TIFF with tifffile
    images.py         reading stacks and whole images (SimpleITK for what stack_files leaves), pixel types, page sizes
    crops.py          cutting model-sized crops around points (shared with training)
    model.py          the model folder, the ONNX Runtime session, prediction in batches
    stack.py          the official stack interface
    points.py         the whole image + candidate points interface
    output.py         writing results atomically
    run.py            one case, start to end
"""
