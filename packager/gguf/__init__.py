"""GGUF export of model variants (llama.cpp / Ollama) and the llama.cpp serving engine.

    packager gguf export VARIANT_DIR --quant q8_0 --quant q4_k_m --out DIR

* `export.export_gguf`  float safetensors checkpoint -> llama.cpp's convert_hf_to_gguf.py -> f16/bf16/f32 GGUF
                        -> `llama_cpp.llama_model_quantize` per quant type -> one artifact directory each
                        (model.gguf, Modelfile, config.json, gguf-export.json, packager-manifest.json);
* `quant`               the quantization types, registered by name;
* `modelfile`           the Ollama Modelfile (chat template in Go-template form, stop tokens);
* `imatrix`             the importance matrix of the 4-bit and lower types, from calibration data;
* `amx`                 llama.cpp's extra buffer types turned off on AMX CPUs, where they crash;
* `artifact`            recognising and reading a GGUF artifact directory.

Importing this package is cheap: llama_cpp, torch and transformers are imported inside the functions that
need them.
"""
