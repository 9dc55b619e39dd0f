-- Lua 5.1: give a library function a new environment.
setfenv(1, {})
return true
