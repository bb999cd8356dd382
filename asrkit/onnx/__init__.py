"""ONNX export (`asrkit export`) and ONNX Runtime inference of exported models, without torch.

    bundle.py     the exported folder: asrkit-onnx.json (format, family, tokenizer, features, [decode]) and
                  frontend.npz (window, mel filterbank, statistics); reading it checks everything (no torch)
    frontend.py   audio -> normalised log-mel in numpy: the same operations as asrkit.data.features (no torch)
    graphs.py     the models' encoders as traceable modules (recurrent layers without packed sequences)
    export.py     checkpoint -> ONNX graphs per objective (CTC: model.onnx; transducer: encoder, predictor,
                  joiner), int8 dynamic quantisation
    runtime.py    an exported folder on onnxruntime: emissions, searches, transcribe / evaluate (no torch)
    rnnt.py       the transducer's greedy and beam searches in numpy over the predictor and joiner graphs
"""
