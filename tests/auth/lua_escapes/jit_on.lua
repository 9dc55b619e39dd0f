-- Turn the JIT back on: compiled loops never fire count hooks.
jit.on()
for i = 1, 1e12 do end
return true
