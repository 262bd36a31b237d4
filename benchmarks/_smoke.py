import sys, torch, numpy as np
sys.path.insert(0, '.')
import cudit
from cudit.reference import qk_norm_rope_ref
torch.manual_seed(0)
B,S,H,D=1,37,4,128
qkv=torch.randn(B,S,3*H*D,device='cuda',dtype=torch.bfloat16)
qw=torch.rand(D,device='cuda')+0.5; kw=torch.rand(D,device='cuda')+0.5
ang=torch.rand(S,D//2,device='cuda')*6.28
cos=torch.cos(ang).repeat_interleave(2,-1).contiguous(); sin=torch.sin(ang).repeat_interleave(2,-1).contiguous()
ref=qk_norm_rope_ref(qkv.float().cpu().numpy(), qw.cpu().numpy(), kw.cpu().numpy(), cos.cpu().numpy(), sin.cpu().numpy(), num_heads=H)
x=qkv.clone()
cudit.qk_norm_rope(x, qw, kw, cos, sin, num_heads=H)
torch.cuda.synchronize()
out=x.float().cpu().numpy()
print('maxerr', np.abs(out-ref).max(), 'rel', np.linalg.norm(out-ref)/np.linalg.norm(ref))
print('V exact', torch.equal(x[...,2*H*D:], qkv[...,2*H*D:]))
